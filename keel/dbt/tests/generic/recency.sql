{#
    The newest value of `field` is no older than `interval` `datepart`s before `reference`.
    reference defaults to the current time; a replayed history passes a reference from the data
    itself (e.g. the latest date the gates admitted), so replaying 2013 does not fail on the
    wall clock.
#}
{% test recency(model, field, datepart, interval, reference=none) %}
with

newest as (
    select max({{ field }}) as newest_value
    from {{ model }}
),

reference_point as (
    select {{ reference if reference is not none else 'current_timestamp' }} as reference_value
)

select
    newest.newest_value,
    reference_point.reference_value
from newest
cross join reference_point
where newest.newest_value is null
    or cast(newest.newest_value as timestamp)
        < cast(reference_point.reference_value as timestamp) - interval ({{ interval | int }}) {{ datepart }}
{% endtest %}

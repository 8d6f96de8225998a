{#
    What happened to each scheduled flight: the outcome components, the label and the time
    stamps at which they become known. Read only by flight_labels (training and evaluation)
    and, respecting those time stamps, by the online feature tables.
#}
with

scheduled_flights as (
    select * from {{ ref('int_flights_scheduled') }}
),

flights as (
    select * from {{ ref('stg_flights') }}
),

outcomes as (
    select
        scheduled_flights.flight_id,
        scheduled_flights.flight_date,
        scheduled_flights.carrier,
        scheduled_flights.origin,
        scheduled_flights.dest,
        scheduled_flights.sched_dep_hour,
        scheduled_flights.sched_dep_at_utc,
        scheduled_flights.label_resolved_at_utc,
        scheduled_flights.label_available_from_date,
        flights.dep_time is null as is_cancelled,
        flights.dep_time is not null and flights.arr_delay is null as is_diverted,
        coalesce(flights.arr_delay > 15, false) as is_arrival_delayed,
        flights.dep_delay,
        flights.arr_delay
    from scheduled_flights
    inner join flights
        on scheduled_flights.flight_date = flights.flight_date
        and scheduled_flights.carrier = flights.carrier
        and scheduled_flights.flight_number = flights.flight_number
        and scheduled_flights.origin = flights.origin
),

final as (
    select
        flight_id,
        flight_date,
        carrier,
        origin,
        dest,
        sched_dep_hour,
        sched_dep_at_utc,
        -- whole minutes: departed before a whole-minute moment p exactly when this is before p
        case
            when not is_cancelled
                then sched_dep_at_utc + to_minutes(cast(floor(dep_delay) as bigint))
        end as actual_dep_at_utc,
        dep_delay,
        arr_delay,
        is_cancelled,
        is_diverted,
        is_arrival_delayed,
        is_cancelled or is_diverted or is_arrival_delayed as is_disrupted,
        label_resolved_at_utc,
        label_available_from_date
    from outcomes
)

select * from final

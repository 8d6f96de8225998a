{{
    config(
        materialized='incremental',
        alias='origin_ops_minutely',
        incremental_strategy='delete+insert',
        unique_key='feature_date',
        on_schema_change='fail',
        pre_hook="{{ delete_partition_window('feature_date') }}",
    )
}}

{#
    Recent operations at an origin for every whole minute p at which a prediction can be made
    (the prediction moments of date D run from local midnight of D - 2 h to that of D + 1 - 2 h),
    over the 3 hours before p, i.e. [p - 3 h, p):
      - departures: flights whose actual departure (scheduled departure UTC + dep_delay) fell
        in the window, with their mean dep_delay;
      - scheduled: flights scheduled to depart in the window;
      - not departed: of those, the ones that had not left by p, cancelled or still held. At p a
        cancellation cannot be told from a long hold (the cancellation is part of the label,
        settled only at label_resolved_at_utc), so this count is the point-in-time observable
        version of "cancellations in the window".
    Every flight counts during one interval of minutes per measure, so the values come from a
    running sum of +1 / -1 at the interval ends, per origin and date, with no self-join.
    Flights scheduled up to 3 days before D are read: dep_delay is at most 48 h by contract.
#}

with

flight_outcomes as (
    select * from {{ ref('int_flight_outcomes') }}
    where {{ in_partition_window('flight_date', lookback_days=3) }}
),

scheduled_flights as (
    select * from {{ ref('int_flights_scheduled') }}
    where {{ in_partition_window('flight_date') }}
),

origin_days as (
    select distinct
        origin,
        origin_time_zone,
        flight_date as feature_date
    from scheduled_flights
),

origin_day_bounds as (
    select
        origin,
        feature_date,
        {{ local_to_utc("cast(feature_date as timestamp)", "origin_time_zone") }}
            - interval 2 hour as first_minute_utc,
        {{ local_to_utc("cast(feature_date + 1 as timestamp)", "origin_time_zone") }}
            - interval 2 hour as end_minute_utc
    from origin_days
),

counting_intervals as (
    -- a departure at minute a counts for p in [a + 1 min, a + 180 min]
    select
        origin,
        flight_date,
        actual_dep_at_utc + interval 1 minute as first_minute_utc,
        actual_dep_at_utc + interval 180 minute as last_minute_utc,
        1 as departures,
        dep_delay as dep_delay_sum,
        0 as scheduled,
        0 as not_departed
    from flight_outcomes
    where actual_dep_at_utc is not null

    union all

    -- a flight scheduled at s counts as scheduled for p in [s + 1 min, s + 180 min]
    select
        origin,
        flight_date,
        sched_dep_at_utc + interval 1 minute,
        sched_dep_at_utc + interval 180 minute,
        0,
        0.0,
        1,
        0
    from flight_outcomes

    union all

    -- ... and as not departed while also p <= a (not left yet) or for good when cancelled
    select
        origin,
        flight_date,
        sched_dep_at_utc + interval 1 minute,
        least(
            sched_dep_at_utc + interval 180 minute,
            coalesce(actual_dep_at_utc, sched_dep_at_utc + interval 180 minute)
        ),
        0,
        0.0,
        0,
        1
    from flight_outcomes
    where actual_dep_at_utc is null or actual_dep_at_utc > sched_dep_at_utc
),

intervals_by_day as (
    -- clipped to the minutes of each date they overlap
    select
        origin_day_bounds.origin,
        origin_day_bounds.feature_date,
        origin_day_bounds.end_minute_utc,
        greatest(counting_intervals.first_minute_utc, origin_day_bounds.first_minute_utc)
            as first_minute_utc,
        counting_intervals.last_minute_utc,
        counting_intervals.departures,
        counting_intervals.dep_delay_sum,
        counting_intervals.scheduled,
        counting_intervals.not_departed
    from counting_intervals
    cross join (values (0), (1), (2), (3)) as days_before(days)
    inner join origin_day_bounds
        on counting_intervals.origin = origin_day_bounds.origin
        and counting_intervals.flight_date + days_before.days = origin_day_bounds.feature_date
    where counting_intervals.first_minute_utc < origin_day_bounds.end_minute_utc
        and counting_intervals.last_minute_utc >= origin_day_bounds.first_minute_utc
),

interval_edges as (
    select
        origin,
        feature_date,
        first_minute_utc as minute_utc,
        departures,
        dep_delay_sum,
        scheduled,
        not_departed
    from intervals_by_day

    union all

    select
        origin,
        feature_date,
        last_minute_utc + interval 1 minute,
        -departures,
        -dep_delay_sum,
        -scheduled,
        -not_departed
    from intervals_by_day
    where last_minute_utc + interval 1 minute < end_minute_utc
),

edges_by_minute as (
    select
        origin,
        feature_date,
        minute_utc,
        sum(departures) as departures,
        sum(dep_delay_sum) as dep_delay_sum,
        sum(scheduled) as scheduled,
        sum(not_departed) as not_departed
    from interval_edges
    group by all
),

prediction_minutes as (
    select
        origin,
        feature_date,
        unnest(range(first_minute_utc, end_minute_utc, interval 1 minute)) as prediction_at_utc
    from origin_day_bounds
),

running_counts as (
    select
        prediction_minutes.origin,
        prediction_minutes.feature_date,
        prediction_minutes.prediction_at_utc,
        sum(coalesce(edges_by_minute.departures, 0)) over running as departures,
        sum(coalesce(edges_by_minute.dep_delay_sum, 0.0)) over running as dep_delay_sum,
        sum(coalesce(edges_by_minute.scheduled, 0)) over running as scheduled,
        sum(coalesce(edges_by_minute.not_departed, 0)) over running as not_departed
    from prediction_minutes
    left join edges_by_minute
        on prediction_minutes.origin = edges_by_minute.origin
        and prediction_minutes.feature_date = edges_by_minute.feature_date
        and prediction_minutes.prediction_at_utc = edges_by_minute.minute_utc
    window running as (
        partition by prediction_minutes.origin, prediction_minutes.feature_date
        order by prediction_minutes.prediction_at_utc
        rows between unbounded preceding and current row
    )
),

final as (
    select
        origin,
        prediction_at_utc,
        feature_date,
        cast(departures as integer) as origin_departures_3h,
        case when departures > 0 then dep_delay_sum / departures end as origin_mean_dep_delay_3h,
        cast(scheduled as integer) as origin_scheduled_3h,
        cast(not_departed as integer) as origin_not_departed_3h
    from running_counts
)

select * from final

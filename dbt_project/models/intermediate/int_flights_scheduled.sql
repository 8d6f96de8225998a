{#
    One row per scheduled flight with what is known before it departs: its key, its schedule in
    UTC, the prediction moment, and when its label will be resolved.

    Label resolution rule: a flight's label is_disrupted is settled at the latest at its
    scheduled arrival + 15 minutes (by then it has arrived within 15 minutes of schedule, or it
    is late, diverted or cancelled). Scheduled arrival in UTC reads sched_arr_time in the
    destination's time zone (airports.tzone) and rolls to the next day when that lands before
    the departure. A destination without a known zone (SJU, BQN, STT, PSE are missing from
    nycflights13's airports) gets scheduled departure + 24 hours, later than any scheduled
    flight from New York ends.

    label_available_from_date is the first flight date D whose earliest prediction moment
    (local midnight of D at the origin - 2 h) is at or after the resolution: the first date
    whose features may count this label.
#}
with

flights as (
    select * from {{ ref('stg_flights') }}
),

airports as (
    select * from {{ ref('stg_airports') }}
),

schedule as (
    select
        flights.flight_date,
        flights.year,
        flights.month,
        flights.day,
        flights.carrier,
        flights.flight_number,
        flights.origin,
        flights.dest,
        flights.tailnum,
        flights.distance,
        flights.sched_dep_hour,
        flights.sched_dep_minute,
        flights.sched_arr_time,
        flights.sched_dep_hour_utc + to_minutes(flights.sched_dep_minute) as sched_dep_at_utc,
        origin_airports.time_zone as origin_time_zone,
        dest_airports.time_zone as dest_time_zone
    from flights
    left join airports as origin_airports
        on flights.origin = origin_airports.airport_code
    left join airports as dest_airports
        on flights.dest = dest_airports.airport_code
),

arrival_candidates as (
    -- the scheduled arrival clock time on the departure date and on the day after, in UTC
    select
        *,
        {{ local_to_utc(
            "flight_date + to_minutes(sched_arr_time // 100 * 60 + sched_arr_time % 100)",
            "dest_time_zone"
        ) }} as sched_arr_same_date_utc,
        {{ local_to_utc(
            "flight_date + 1 + to_minutes(sched_arr_time // 100 * 60 + sched_arr_time % 100)",
            "dest_time_zone"
        ) }} as sched_arr_next_date_utc
    from schedule
),

scheduled_arrival as (
    select
        *,
        case
            when sched_arr_same_date_utc >= sched_dep_at_utc then sched_arr_same_date_utc
            -- arrives on a later local date than it leaves (overnight, or a long flight west)
            else sched_arr_next_date_utc
        end as sched_arr_at_utc
    from arrival_candidates
),

label_resolution as (
    select
        *,
        coalesce(
            sched_arr_at_utc + interval 15 minute,
            sched_dep_at_utc + interval 24 hour
        ) as label_resolved_at_utc
    from scheduled_arrival
),

final as (
    select
        {{ flight_id('flight_date', 'carrier', 'flight_number', 'origin') }} as flight_id,
        flight_date,
        year,
        month,
        day,
        carrier,
        flight_number,
        origin,
        dest,
        tailnum,
        distance,
        sched_dep_hour,
        sched_dep_minute,
        sched_dep_at_utc,
        sched_dep_at_utc - interval 2 hour as prediction_at_utc,
        sched_arr_at_utc,
        label_resolved_at_utc,
        -- ceiling to the next local midnight of (resolution + 2 h): a label resolved exactly at
        -- a cutoff counts from that date
        cast(
            {{ utc_to_local("label_resolved_at_utc + interval 2 hour", "origin_time_zone") }}
            - interval 1 microsecond
            as date
        ) + 1 as label_available_from_date,
        origin_time_zone
    from label_resolution
)

select * from final

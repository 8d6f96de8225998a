with

flights as (
    select * from {{ source('validated', 'flights') }}
),

passed_days as (
    -- the latest gate evaluation of the day decides; a day without one has not passed
    {{ gated_days('flights') }}
),

renamed as (
    select
        cast(flights._partition_date as date) as flight_date,
        cast(flights.year as integer) as year,
        cast(flights.month as integer) as month,
        cast(flights.day as integer) as day,
        cast(flights.carrier as varchar) as carrier,
        cast(flights.flight as integer) as flight_number,
        cast(flights.origin as varchar) as origin,
        cast(flights.dest as varchar) as dest,
        cast(flights.tailnum as varchar) as tailnum,
        cast(flights.distance as double) as distance,
        cast(flights.sched_dep_time as integer) as sched_dep_time,
        cast(flights.hour as integer) as sched_dep_hour,
        cast(flights.minute as integer) as sched_dep_minute,
        cast(flights.time_hour as timestamp) as sched_dep_hour_utc,
        cast(flights.sched_arr_time as integer) as sched_arr_time,
        cast(flights.dep_time as integer) as dep_time,
        cast(flights.dep_delay as double) as dep_delay,
        cast(flights.arr_time as integer) as arr_time,
        cast(flights.arr_delay as double) as arr_delay,
        cast(flights.air_time as double) as air_time,
        cast(flights._source_file as varchar) as source_file,
        cast(flights._source_row as bigint) as source_row
    from flights
    semi join passed_days
        on flights._partition_date = passed_days.partition_date
)

select * from renamed

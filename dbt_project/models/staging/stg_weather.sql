with

weather as (
    select * from {{ source('validated', 'weather') }}
),

passed_days as (
    -- the latest gate evaluation of the day decides; a day without one has not passed
    {{ gated_days('weather') }}
),

renamed as (
    select
        cast(weather.origin as varchar) as origin,
        cast(weather.time_hour as timestamp) as observed_at_utc,
        cast(weather._partition_date as date) as observation_date,
        cast(weather.hour as integer) as observation_hour,
        cast(weather.temp as double) as temp,
        cast(weather.dewp as double) as dewp,
        cast(weather.humid as double) as humid,
        cast(weather.wind_dir as double) as wind_dir,
        cast(weather.wind_speed as double) as wind_speed,
        cast(weather.wind_gust as double) as wind_gust,
        cast(weather.precip as double) as precip,
        cast(weather.pressure as double) as pressure,
        cast(weather.visib as double) as visib,
        cast(weather._source_file as varchar) as source_file,
        cast(weather._source_row as bigint) as source_row
    from weather
    semi join passed_days
        on weather._partition_date = passed_days.partition_date
)

select * from renamed

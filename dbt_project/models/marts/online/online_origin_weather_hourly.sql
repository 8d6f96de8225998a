{{
    config(
        materialized='incremental',
        alias='origin_weather_hourly',
        incremental_strategy='delete+insert',
        unique_key='feature_date',
        on_schema_change='fail',
        pre_hook="{{ delete_partition_window('feature_date') }}",
    )
}}

{#
    The weather at an origin as known at the start of each UTC hour: the last observation at or
    before that instant (ASOF join on observed_at_utc), if at most var weather_max_age_hours old.
    Observations come on the hour, so for any moment p the last observation at or before p is
    the one of hour bucket date_trunc('hour', p): flight_features and the online store look
    weather up by (origin, that bucket) and need nothing finer. (Were observations to arrive
    between hours, one within the hour before p would be missed, never leaked.)

    feature_date is the flight date whose prediction moments fall in the bucket: the buckets of
    date D run from local midnight of D - 2 h to local midnight of D + 1 - 2 h, for every origin
    with a flight scheduled on D.
#}

{%- if var('weather_max_age_hours') | int > 48 -%}
    {{ exceptions.raise_compiler_error(
        "weather_max_age_hours above 48 needs a longer weather lookback than 3 days in this model"
    ) }}
{%- endif %}

with

scheduled_flights as (
    select * from {{ ref('int_flights_scheduled') }}
    where {{ in_partition_window('flight_date') }}
),

weather as (
    -- buckets start at local midnight - 2 h and reach back weather_max_age_hours (<= 48)
    select * from {{ ref('stg_weather') }}
    where {{ in_partition_window('observation_date', lookback_days=3) }}
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
            - interval 2 hour as first_prediction_at_utc,
        {{ local_to_utc("cast(feature_date + 1 as timestamp)", "origin_time_zone") }}
            - interval 2 hour as next_day_first_prediction_at_utc
    from origin_days
),

hour_buckets as (
    select
        origin,
        feature_date,
        unnest(range(
            first_prediction_at_utc, next_day_first_prediction_at_utc, interval 1 hour
        )) as bucket_start_utc
    from origin_day_bounds
),

last_observation as (
    select
        hour_buckets.origin,
        hour_buckets.feature_date,
        hour_buckets.bucket_start_utc,
        weather.observed_at_utc,
        weather.temp,
        weather.dewp,
        weather.humid,
        weather.wind_speed,
        weather.wind_gust,
        weather.precip,
        weather.pressure,
        weather.visib
    from hour_buckets
    asof left join weather
        on hour_buckets.origin = weather.origin
        and hour_buckets.bucket_start_utc >= weather.observed_at_utc
),

recent_observation as (
    select
        *,
        observed_at_utc >= bucket_start_utc - to_hours({{ var('weather_max_age_hours') | int }})
            as is_recent
    from last_observation
),

final as (
    select
        origin,
        bucket_start_utc,
        feature_date,
        case when is_recent then observed_at_utc end as observed_at_utc,
        case when is_recent then temp end as weather_temp,
        case when is_recent then dewp end as weather_dewp,
        case when is_recent then humid end as weather_humid,
        case when is_recent then wind_speed end as weather_wind_speed,
        case when is_recent then wind_gust end as weather_wind_gust,
        case when is_recent then precip end as weather_precip,
        case when is_recent then pressure end as weather_pressure,
        case when is_recent then visib end as weather_visib
    from recent_observation
)

select * from final

{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='flight_date',
        on_schema_change='fail',
        pre_hook="{{ delete_partition_window('flight_date') }}",
    )
}}

{#
    One row per scheduled flight with every feature as known at its prediction moment
    (scheduled departure UTC - 2 h). Every feature is looked up in an online.* table by entity
    and time bucket, exactly as usecases.flights_online.OnlineFeatureStore does at serving time,
    so training and serving read the same values. The label lives in flight_labels.
#}

with

scheduled_flights as (
    select * from {{ ref('int_flights_scheduled') }}
    where {{ in_partition_window('flight_date') }}
),

calendar_features as (
    select * from {{ ref('online_calendar_features') }}
),

aircraft_features as (
    select * from {{ ref('online_aircraft_features') }}
),

origin_weather as (
    select * from {{ ref('online_origin_weather_hourly') }}
    where {{ in_partition_window('feature_date') }}
),

origin_ops as (
    select * from {{ ref('online_origin_ops_minutely') }}
    where {{ in_partition_window('feature_date') }}
),

network_rates as (
    select * from {{ ref('online_network_features') }}
    where {{ in_partition_window('feature_date') }}
),

route_rates as (
    select * from {{ ref('online_route_features') }}
    where {{ in_partition_window('feature_date') }}
),

carrier_rates as (
    select * from {{ ref('online_carrier_features') }}
    where {{ in_partition_window('feature_date') }}
),

origin_hour_rates as (
    select * from {{ ref('online_origin_hour_features') }}
    where {{ in_partition_window('feature_date') }}
),

flights_at_prediction as (
    select
        *,
        date_trunc('hour', prediction_at_utc) as prediction_hour_utc
    from scheduled_flights
),

final as (
    select
        flights_at_prediction.flight_id,
        flights_at_prediction.flight_date,
        flights_at_prediction.flight_number,
        flights_at_prediction.tailnum,
        flights_at_prediction.sched_dep_at_utc,
        flights_at_prediction.prediction_at_utc,

        flights_at_prediction.sched_dep_hour,
        flights_at_prediction.sched_dep_hour * 60 + flights_at_prediction.sched_dep_minute
            as sched_dep_minute_of_day,
        calendar_features.day_of_week,
        calendar_features.month,
        calendar_features.days_to_nearest_holiday,
        calendar_features.days_to_next_holiday,
        calendar_features.days_since_last_holiday,

        flights_at_prediction.origin,
        flights_at_prediction.dest,
        flights_at_prediction.carrier,
        flights_at_prediction.distance,

        cast(flights_at_prediction.year as double) - aircraft_features.manufacture_year
            as aircraft_age_years,
        aircraft_features.aircraft_seats,
        aircraft_features.aircraft_engines,
        aircraft_features.aircraft_engine_type,

        origin_weather.weather_temp,
        origin_weather.weather_dewp,
        origin_weather.weather_humid,
        origin_weather.weather_wind_speed,
        origin_weather.weather_wind_gust,
        origin_weather.weather_precip,
        origin_weather.weather_pressure,
        origin_weather.weather_visib,
        cast(date_diff('minute', origin_weather.observed_at_utc, flights_at_prediction.prediction_at_utc)
            as double) as weather_obs_age_minutes,

        coalesce(origin_ops.origin_departures_3h, 0) as origin_departures_3h,
        origin_ops.origin_mean_dep_delay_3h,
        coalesce(origin_ops.origin_scheduled_3h, 0) as origin_scheduled_3h,
        coalesce(origin_ops.origin_not_departed_3h, 0) as origin_not_departed_3h,

        network_rates.network_disruption_rate_7d,
        network_rates.network_disruption_rate_28d,

        -- an entity without a row (neither scheduled that day nor resolved in 28 days, which
        -- only an online request can meet) has zero counts and the network's rate
        coalesce(route_rates.route_flights_7d, 0) as route_flights_7d,
        coalesce(route_rates.route_disrupted_7d, 0) as route_disrupted_7d,
        coalesce(route_rates.route_disruption_rate_7d, network_rates.network_disruption_rate_7d)
            as route_disruption_rate_7d,
        coalesce(route_rates.route_flights_28d, 0) as route_flights_28d,
        coalesce(route_rates.route_disrupted_28d, 0) as route_disrupted_28d,
        coalesce(route_rates.route_disruption_rate_28d, network_rates.network_disruption_rate_28d)
            as route_disruption_rate_28d,

        coalesce(carrier_rates.carrier_flights_7d, 0) as carrier_flights_7d,
        coalesce(carrier_rates.carrier_disrupted_7d, 0) as carrier_disrupted_7d,
        coalesce(carrier_rates.carrier_disruption_rate_7d, network_rates.network_disruption_rate_7d)
            as carrier_disruption_rate_7d,
        coalesce(carrier_rates.carrier_flights_28d, 0) as carrier_flights_28d,
        coalesce(carrier_rates.carrier_disrupted_28d, 0) as carrier_disrupted_28d,
        coalesce(carrier_rates.carrier_disruption_rate_28d, network_rates.network_disruption_rate_28d)
            as carrier_disruption_rate_28d,

        coalesce(origin_hour_rates.origin_hour_flights_7d, 0) as origin_hour_flights_7d,
        coalesce(origin_hour_rates.origin_hour_disrupted_7d, 0) as origin_hour_disrupted_7d,
        coalesce(origin_hour_rates.origin_hour_disruption_rate_7d, network_rates.network_disruption_rate_7d)
            as origin_hour_disruption_rate_7d,
        coalesce(origin_hour_rates.origin_hour_flights_28d, 0) as origin_hour_flights_28d,
        coalesce(origin_hour_rates.origin_hour_disrupted_28d, 0) as origin_hour_disrupted_28d,
        coalesce(origin_hour_rates.origin_hour_disruption_rate_28d, network_rates.network_disruption_rate_28d)
            as origin_hour_disruption_rate_28d
    from flights_at_prediction
    left join calendar_features
        on flights_at_prediction.flight_date = calendar_features.feature_date
    left join aircraft_features
        on flights_at_prediction.tailnum = aircraft_features.tailnum
    left join origin_weather
        on flights_at_prediction.origin = origin_weather.origin
        and flights_at_prediction.prediction_hour_utc = origin_weather.bucket_start_utc
    left join origin_ops
        on flights_at_prediction.origin = origin_ops.origin
        and flights_at_prediction.prediction_at_utc = origin_ops.prediction_at_utc
    left join network_rates
        on flights_at_prediction.flight_date = network_rates.feature_date
    left join route_rates
        on flights_at_prediction.origin = route_rates.origin
        and flights_at_prediction.dest = route_rates.dest
        and flights_at_prediction.flight_date = route_rates.feature_date
    left join carrier_rates
        on flights_at_prediction.carrier = carrier_rates.carrier
        and flights_at_prediction.flight_date = carrier_rates.feature_date
    left join origin_hour_rates
        on flights_at_prediction.origin = origin_hour_rates.origin
        and flights_at_prediction.sched_dep_hour = origin_hour_rates.sched_dep_hour
        and flights_at_prediction.flight_date = origin_hour_rates.feature_date
)

select * from final

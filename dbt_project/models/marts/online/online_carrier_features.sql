{{
    config(
        materialized='incremental',
        alias='carrier_features',
        incremental_strategy='delete+insert',
        unique_key='feature_date',
        on_schema_change='fail',
        pre_hook="{{ delete_partition_window('feature_date') }}",
    )
}}

{#
    Disruption rates of each carrier over trailing 7 and 28 days, per feature date.
    Point-in-time rule, smoothing and row coverage: macro trailing_disruption_rate_ctes.
#}

with

scheduled_flights as (
    select * from {{ ref('int_flights_scheduled') }}
),

flight_outcomes as (
    select * from {{ ref('int_flight_outcomes') }}
),

network_rates as (
    select * from {{ ref('online_network_features') }}
    where {{ in_partition_window('feature_date') }}
),

{{ trailing_disruption_rate_ctes(['carrier'], 'carrier') }},

final as (
    select * from smoothed_rates
)

select * from final

{{
    config(
        materialized='incremental',
        alias='network_features',
        incremental_strategy='delete+insert',
        unique_key='feature_date',
        on_schema_change='fail',
        pre_hook="{{ delete_partition_window('feature_date') }}",
    )
}}

{#
    Disruption rate of all flights from the New York airports over trailing 7 and 28 days, per
    feature date: the prior every entity rate is smoothed toward. Same point-in-time rule as the
    entity rates (macro trailing_disruption_rate_ctes): a label counts for date D from its
    label_available_from_date on, so the windows end before the first prediction of D.
#}

with

scheduled_flights as (
    select * from {{ ref('int_flights_scheduled') }}
),

flight_outcomes as (
    select * from {{ ref('int_flight_outcomes') }}
),

feature_dates as (
    select distinct flight_date as feature_date
    from scheduled_flights
    where {{ in_partition_window('flight_date') }}
),

resolved_labels_daily as (
    select
        label_available_from_date as available_date,
        count(*) as flights_resolved,
        count(*) filter (where is_disrupted) as flights_disrupted
    from flight_outcomes
    where {{ in_partition_window('flight_date', lookback_days=30) }}
        and {{ in_partition_window('label_available_from_date', lookback_days=27) }}
    group by all
),

trailing_counts as (
    select
        feature_dates.feature_date,
        coalesce(sum(resolved_labels_daily.flights_resolved)
            filter (where resolved_labels_daily.available_date > feature_dates.feature_date - 7), 0)
            as flights_7d,
        coalesce(sum(resolved_labels_daily.flights_disrupted)
            filter (where resolved_labels_daily.available_date > feature_dates.feature_date - 7), 0)
            as disrupted_7d,
        coalesce(sum(resolved_labels_daily.flights_resolved), 0) as flights_28d,
        coalesce(sum(resolved_labels_daily.flights_disrupted), 0) as disrupted_28d
    from feature_dates
    left join resolved_labels_daily
        on resolved_labels_daily.available_date
            between feature_dates.feature_date - 27 and feature_dates.feature_date
    group by feature_dates.feature_date
),

final as (
    select
        feature_date,
        cast(flights_7d as integer) as network_flights_7d,
        cast(disrupted_7d as integer) as network_disrupted_7d,
        cast(disrupted_7d as double) / nullif(flights_7d, 0) as network_disruption_rate_7d,
        cast(flights_28d as integer) as network_flights_28d,
        cast(disrupted_28d as integer) as network_disrupted_28d,
        cast(disrupted_28d as double) / nullif(flights_28d, 0) as network_disruption_rate_28d,
        cast({{ var('disruption_rate_prior_weight') }} as double) as disruption_rate_prior_weight
    from trailing_counts
)

select * from final

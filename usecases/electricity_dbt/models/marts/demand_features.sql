{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='market_date',
        on_schema_change='fail',
        pre_hook="{{ delete_partition_window('market_date') }}",
        meta={'partition_column': 'market_date'},
    )
}}

{#
    One row per half hour of a market day D, with what is known the evening before D: the
    calendar, D-1's and D-7's demand and temperature, and how often the same half hour peaked
    over the trailing 7 and 28 days (macro trailing_rate_ctes: an outcome of day d counts
    from d + 1 on, when its day is complete).
#}

with

half_hours as (
    select * from {{ ref('stg_demand') }}
    where {{ in_partition_window('market_date', lookback_days=31) }}
),

targets as (
    select half_hour, market_date
    from half_hours
    where {{ in_partition_window('market_date') }}
),

outcomes as (
    select
        half_hour,
        market_date,
        market_date + 1 as available_date,
        demand_gw >= {{ var('peak_gw', 5.0) }} as positive
    from half_hours
    where demand_gw is not null
),

{{ trailing_rate_ctes(
    ['half_hour'], 'slot', target_date='market_date', outcome_date='market_date',
    names={'rows': 'intervals', 'positives': 'peaks', 'rate': 'peak_rate'}, label_delay_days=1
) }},

days as (
    select
        market_date,
        max(demand_gw) as demand_max,
        max(temperature_c) as temperature_max
    from half_hours
    group by market_date
),

final as (
    select
        strftime(target.interval_start, '%Y%m%d%H%M') as interval_id,
        target.market_date,
        target.interval_start,
        target.half_hour,
        cast(isodow(target.market_date) as integer) as day_of_week,
        target.work_day,
        cast(month(target.market_date) as integer) as month,
        day_before.demand_gw as demand_same_slot_1d,
        week_before.demand_gw as demand_same_slot_7d,
        previous_day.demand_max as demand_max_1d,
        day_before.temperature_c as temperature_same_slot_1d,
        previous_day.temperature_max as temperature_max_1d,
        {%- for n in [7, 28] %}
        rates.slot_intervals_{{ n }}d,
        rates.slot_peaks_{{ n }}d,
        rates.slot_peak_rate_{{ n }}d{{ ',' if not loop.last }}
        {%- endfor %}
    from half_hours as target
    left join half_hours as day_before
        on day_before.half_hour = target.half_hour and day_before.market_date = target.market_date - 1
    left join half_hours as week_before
        on week_before.half_hour = target.half_hour and week_before.market_date = target.market_date - 7
    left join days as previous_day
        on previous_day.market_date = target.market_date - 1
    left join smoothed_rates as rates
        on rates.half_hour = target.half_hour and rates.feature_date = target.market_date
    where {{ in_partition_window('target.market_date') }}
)

select * from final

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

with

half_hours as (
    select * from {{ ref('stg_demand') }}
    where {{ in_partition_window('market_date') }}
),

final as (
    select
        strftime(interval_start, '%Y%m%d%H%M') as interval_id,
        market_date,
        -- null when the demand was not measured: an outcome not known
        demand_gw >= {{ var('peak_gw', 5.0) }} as is_peak,
        demand_gw
    from half_hours
)

select * from final

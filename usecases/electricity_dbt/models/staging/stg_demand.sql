with

demand as (
    select * from {{ source('validated', 'demand') }}
),

passed_days as (
    {{ gated_days('demand') }}
),

renamed as (
    select
        cast(demand._partition_date as date) as market_date,
        cast(demand.interval_start as timestamp) as interval_start,
        cast(hour(demand.interval_start) * 2 + minute(demand.interval_start) // 30 as integer) as half_hour,
        cast(demand.demand_gw as double) as demand_gw,
        cast(demand.work_day as integer) as work_day,
        cast(demand.temperature_c as double) as temperature_c
    from demand
    semi join passed_days
        on demand._partition_date = passed_days.partition_date
)

select * from renamed

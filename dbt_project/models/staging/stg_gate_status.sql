with

gate_status as (
    select * from {{ source('audit', 'gate_status') }}
),

renamed as (
    select
        cast(table_name as varchar) as table_name,
        cast(partition_date as date) as partition_date,
        cast(passed as boolean) as passed,
        cast(failed_checks as varchar) as failed_checks,
        cast(evaluated_at as timestamp) as evaluated_at_utc
    from gate_status
)

select * from renamed

with

airlines as (
    select * from {{ source('validated', 'airlines') }}
),

renamed as (
    select
        cast(carrier as varchar) as carrier,
        cast(name as varchar) as carrier_name,
        cast(_source_file as varchar) as source_file,
        cast(_source_row as bigint) as source_row
    from airlines
)

select * from renamed

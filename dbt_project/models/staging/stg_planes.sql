with

planes as (
    select * from {{ source('validated', 'planes') }}
),

renamed as (
    select
        cast(tailnum as varchar) as tailnum,
        cast(year as double) as manufacture_year,
        cast(type as varchar) as aircraft_type,
        cast(manufacturer as varchar) as manufacturer,
        cast(model as varchar) as model,
        cast(engines as integer) as engines,
        cast(seats as integer) as seats,
        cast(speed as double) as cruise_speed_mph,
        cast(engine as varchar) as engine_type,
        cast(_source_file as varchar) as source_file,
        cast(_source_row as bigint) as source_row
    from planes
)

select * from renamed

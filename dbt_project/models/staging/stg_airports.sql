with

airports as (
    select * from {{ source('validated', 'airports') }}
),

renamed as (
    select
        cast(faa as varchar) as airport_code,
        cast(name as varchar) as airport_name,
        cast(lat as double) as latitude,
        cast(lon as double) as longitude,
        cast(alt as double) as altitude_ft,
        cast(tz as integer) as standard_utc_offset_hours,
        cast(dst as varchar) as dst_rule,
        cast(tzone as varchar) as time_zone,
        cast(_source_file as varchar) as source_file,
        cast(_source_row as bigint) as source_row
    from airports
)

select * from renamed

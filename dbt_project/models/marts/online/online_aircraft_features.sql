{{ config(materialized='table', alias='aircraft_features') }}

{#
    Aircraft features per tail number from the registry snapshot. The age of an aircraft at a
    flight is the flight's year minus manufacture_year (computed in flight_features and in the
    online store alike); a tail number missing here gives null aircraft features.
#}

with

planes as (
    select * from {{ ref('stg_planes') }}
),

final as (
    select
        tailnum,
        manufacture_year,
        cast(seats as double) as aircraft_seats,
        cast(engines as double) as aircraft_engines,
        engine_type as aircraft_engine_type
    from planes
)

select * from final

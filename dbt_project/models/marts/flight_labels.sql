{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='flight_date',
        on_schema_change='fail',
        pre_hook="{{ delete_partition_window('flight_date') }}",
    )
}}

{#
    The label of every scheduled flight, for training and evaluation only: join it to
    flight_features on flight_id. is_disrupted = cancelled, diverted, or arriving more than
    15 minutes late. label_resolved_at_utc says when the label is known at the latest.
#}

with

flight_outcomes as (
    select * from {{ ref('int_flight_outcomes') }}
    where {{ in_partition_window('flight_date') }}
),

final as (
    select
        flight_id,
        flight_date,
        is_disrupted,
        is_cancelled,
        is_diverted,
        is_arrival_delayed,
        dep_delay,
        arr_delay,
        label_resolved_at_utc
    from flight_outcomes
)

select * from final

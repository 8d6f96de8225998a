{{ config(materialized='view', tags=['daily']) }}

{#
    The label of every scheduled flight as the next training run sees it, with its provenance:
    upstream's (flight_labels), or the correction in effect now (label_corrections, where the
    rule for several corrections of one flight is kept: the one received last). A view, so a
    correction loaded into label_corrections shows here at once, without rebuilding past days;
    tagged daily, so it is built after flight_labels. Training applies the corrections in effect
    at its feedback as-of time from the same intervals (keel.ml.datasets), so keel reproduce of
    an older model reads the corrections of then, not this view.
#}

with

flight_labels as (
    select * from {{ ref('flight_labels') }}
),

label_corrections as (
    select * from {{ ref('label_corrections') }}
),

corrections_in_effect as (
    select * from label_corrections
    where is_current
),

final as (
    select
        flight_labels.flight_id,
        flight_labels.flight_date,
        coalesce(corrections_in_effect.is_disrupted, flight_labels.is_disrupted) as is_disrupted,
        case when corrections_in_effect.feedback_id is null then 'upstream' else 'correction' end as label_source,
        corrections_in_effect.feedback_id,
        corrections_in_effect.valid_from as corrected_at,
        corrections_in_effect.actor as corrected_by,
        coalesce(corrections_in_effect.is_conflicting, false) as is_conflicting,
        flight_labels.is_disrupted as upstream_is_disrupted,
        flight_labels.label_resolved_at_utc
    from flight_labels
    left join corrections_in_effect
        on corrections_in_effect.flight_id = flight_labels.flight_id
)

select * from final

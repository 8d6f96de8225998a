{{ config(materialized='table') }}

{#
    Every correction of a flight's label with the interval in which it is in effect. The rule
    for several corrections of one flight: the one Keel received last is in effect from the
    moment it was received (ties by feedback id); earlier ones stay, closed at that moment.
    Training reads the correction in effect at its feedback as-of time (valid_from <= as_of
    < valid_to), so a model trained before a later correction is reproduced with the labels
    it saw. A flight whose corrections disagree with each other is marked is_conflicting.
#}

with

feedback as (
    select * from {{ source('feedback', 'label_corrections') }}
    -- A feedback id is recorded once at intake; should one ever repeat, the first counts.
    qualify row_number() over (partition by feedback_id order by received_at) = 1
),

final as (
    select
        key as flight_id,
        label = 1 as is_disrupted,
        feedback_id,
        actor,
        reason,
        source,
        received_at as valid_from,
        lead(received_at) over (partition by key order by received_at, feedback_id) as valid_to,
        min(label) over (partition by key) <> max(label) over (partition by key) as is_conflicting,
        count(*) over (partition by key) as corrections_of_flight
    from feedback
)

select *, valid_to is null as is_current from final

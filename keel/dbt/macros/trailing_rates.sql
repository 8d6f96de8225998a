{#
    Trailing rates of a binary outcome per entity, for every feature date of the run, as CTEs
    ending in `smoothed_rates`. The calling model defines three import CTEs and ends with
    `select * from final`:

    - `targets`: the prediction targets, with `entity_columns` and their date `target_date`
      (the feature date); every entity with a target on D gets a row for D;
    - `outcomes`: resolved outcomes, with `entity_columns`, their own date `outcome_date`, the
      date `available_date` from which they may be counted (the first date whose earliest
      prediction moment comes after the outcome is known) and the boolean `positive`;
      `available_date` must fall 1..`label_delay_days` days after `outcome_date`;
    - `prior` (optional): per feature_date, the weight of the prior `prior_weight` (in
      outcomes) and the prior rate of each window, `<prior_rate>_<n>d`.

    Point in time: an outcome counts for feature date D only from its available_date on, so
    the n-day window of D holds the outcomes that became available on D-(n-1) .. D, and a
    rebuild of D reads no target scheduled on D or later.

    Smoothing (with a prior): rate = (positives + w * prior rate) / (outcomes + w), a Beta
    prior with w pseudo-outcomes: an entity with few outcomes starts at the prior and moves to
    its own rate as evidence accumulates. Without a prior: positives / outcomes, null while
    the window holds none.

    Columns of `smoothed_rates`: the entity columns, feature_date, and per window n of
    `windows`: <prefix>_<names.rows>_<n>d, <prefix>_<names.positives>_<n>d and
    <prefix>_<names.rate>_<n>d. Rows: every entity with a target on D and every entity with an
    outcome in D's longest window.
#}
{% macro trailing_rate_ctes(
    entity_columns, prefix,
    target_date='target_date', outcome_date='outcome_date', available_date='available_date',
    positive='positive', prior=none, prior_weight='prior_weight', prior_rate='prior_rate',
    names={'rows': 'outcomes', 'positives': 'positives', 'rate': 'rate'},
    windows=[7, 28], label_delay_days=3
) -%}
{%- set entity = entity_columns | join(', ') -%}
{%- set longest = windows | max -%}

feature_dates as (
    select distinct {{ target_date }} as feature_date
    from targets
    where {{ in_partition_window(target_date) }}
),

scheduled_entities as (
    select distinct
        {{ entity }},
        {{ target_date }} as feature_date
    from targets
    where {{ in_partition_window(target_date) }}
),

resolved_daily as (
    -- available_date falls 1..label_delay_days after outcome_date, so the outcome_date
    -- bound only prunes and never drops an outcome
    select
        {{ entity }},
        {{ available_date }} as available_date,
        count(*) as outcomes_resolved,
        count(*) filter (where {{ positive }}) as outcomes_positive
    from outcomes
    where {{ in_partition_window(outcome_date, lookback_days=longest - 1 + label_delay_days) }}
        and {{ in_partition_window(available_date, lookback_days=longest - 1) }}
    group by all
),

grid_dates as (
    select cast(unnest(range(
        cast(min(feature_date) - {{ longest - 1 }} as timestamp),
        cast(max(feature_date) + 1 as timestamp),
        interval 1 day
    )) as date) as grid_date
    from feature_dates
    having count(*) > 0
),

grid_entities as (
    select {{ entity }} from resolved_daily
    union
    select {{ entity }} from scheduled_entities
),

entity_days as (
    select
        grid_entities.*,
        grid_dates.grid_date,
        coalesce(resolved_daily.outcomes_resolved, 0) as outcomes_resolved,
        coalesce(resolved_daily.outcomes_positive, 0) as outcomes_positive
    from grid_entities
    cross join grid_dates
    left join resolved_daily
        on {% for column in entity_columns -%}
            grid_entities.{{ column }} = resolved_daily.{{ column }} and
        {% endfor -%}
        grid_dates.grid_date = resolved_daily.available_date
),

trailing_counts as (
    select
        {{ entity }},
        grid_date as feature_date,
        {%- for n in windows %}
        sum(outcomes_resolved) over last_{{ n }}_days as outcomes_{{ n }}d,
        sum(outcomes_positive) over last_{{ n }}_days as positive_{{ n }}d{{ ',' if not loop.last }}
        {%- endfor %}
    from entity_days
    window
        {%- for n in windows %}
        last_{{ n }}_days as (
            partition by {{ entity }} order by grid_date
            range between interval {{ n - 1 }} days preceding and current row
        ){{ ',' if not loop.last }}
        {%- endfor %}
),

entity_feature_days as (
    select trailing_counts.*
    from trailing_counts
    inner join feature_dates
        on trailing_counts.feature_date = feature_dates.feature_date
    left join scheduled_entities
        on {% for column in entity_columns -%}
            trailing_counts.{{ column }} = scheduled_entities.{{ column }} and
        {% endfor -%}
        trailing_counts.feature_date = scheduled_entities.feature_date
    where trailing_counts.outcomes_{{ longest }}d > 0
        or scheduled_entities.feature_date is not null
),

smoothed_rates as (
    select
        {% for column in entity_columns -%}
        entity_feature_days.{{ column }},
        {% endfor -%}
        entity_feature_days.feature_date,
        {%- for n in windows %}
        cast(entity_feature_days.outcomes_{{ n }}d as integer) as {{ prefix }}_{{ names.rows }}_{{ n }}d,
        cast(entity_feature_days.positive_{{ n }}d as integer) as {{ prefix }}_{{ names.positives }}_{{ n }}d,
        {%- if prior is none %}
        cast(entity_feature_days.positive_{{ n }}d as double)
            / nullif(cast(entity_feature_days.outcomes_{{ n }}d as double), 0)
            as {{ prefix }}_{{ names.rate }}_{{ n }}d{{ ',' if not loop.last }}
        {%- else %}
        (cast(entity_feature_days.positive_{{ n }}d as double)
            + {{ prior }}.{{ prior_weight }} * {{ prior }}.{{ prior_rate }}_{{ n }}d)
            / (cast(entity_feature_days.outcomes_{{ n }}d as double) + {{ prior }}.{{ prior_weight }})
            as {{ prefix }}_{{ names.rate }}_{{ n }}d{{ ',' if not loop.last }}
        {%- endif %}
        {%- endfor %}
    from entity_feature_days
    {%- if prior is not none %}
    left join {{ prior }}
        on entity_feature_days.feature_date = {{ prior }}.feature_date
    {%- endif %}
)
{%- endmacro %}

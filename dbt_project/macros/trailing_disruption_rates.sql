{#
    Trailing disruption rates of one entity (a route, a carrier, an origin-hour) for every
    feature date of the run, as CTEs. The calling model defines the import CTEs
    `scheduled_flights` (int_flights_scheduled), `flight_outcomes` (int_flight_outcomes) and
    `network_rates` (online_network_features) and ends with `select * from final`.

    Point in time: a flight's label counts for feature date D only from its
    label_available_from_date on, the first date whose earliest prediction moment
    (local midnight - 2 h) comes after the label is resolved. So the 7-day window of D holds
    the labels that became available on D-6 .. D, all resolved before any flight of D is
    predicted, and a rebuild of D reads no flight scheduled on D or later.

    Smoothing: rate = (disrupted + w * network rate) / (flights + w), with w the var
    disruption_rate_prior_weight (in flights) and the network rate of the same window and date:
    an entity with few resolved flights starts at the network's rate and moves to its own as
    evidence accumulates (a Beta prior with w pseudo-flights). Null while the network itself
    has no resolved flight in the window (the first day of data).

    Rows: every entity scheduled on D, and every entity with a resolved flight in D's 28-day
    window, so that an online lookup of any such entity finds its row.
#}
{% macro trailing_disruption_rate_ctes(entity_columns, prefix) -%}
{%- set entity = entity_columns | join(', ') -%}

feature_dates as (
    select distinct flight_date as feature_date
    from scheduled_flights
    where {{ in_partition_window('flight_date') }}
),

scheduled_entities as (
    select distinct
        {{ entity }},
        flight_date as feature_date
    from scheduled_flights
    where {{ in_partition_window('flight_date') }}
),

resolved_labels_daily as (
    -- available_from_date >= flight_date + 1 and <= flight_date + 3 (tested on
    -- int_flight_outcomes), so the flight_date bound only prunes and never drops a label
    select
        {{ entity }},
        label_available_from_date as available_date,
        count(*) as flights_resolved,
        count(*) filter (where is_disrupted) as flights_disrupted
    from flight_outcomes
    where {{ in_partition_window('flight_date', lookback_days=30) }}
        and {{ in_partition_window('label_available_from_date', lookback_days=27) }}
    group by all
),

grid_dates as (
    select cast(unnest(range(
        cast(min(feature_date) - 27 as timestamp),
        cast(max(feature_date) + 1 as timestamp),
        interval 1 day
    )) as date) as grid_date
    from feature_dates
    having count(*) > 0
),

grid_entities as (
    select {{ entity }} from resolved_labels_daily
    union
    select {{ entity }} from scheduled_entities
),

entity_days as (
    select
        grid_entities.*,
        grid_dates.grid_date,
        coalesce(resolved_labels_daily.flights_resolved, 0) as flights_resolved,
        coalesce(resolved_labels_daily.flights_disrupted, 0) as flights_disrupted
    from grid_entities
    cross join grid_dates
    left join resolved_labels_daily
        on {% for column in entity_columns -%}
            grid_entities.{{ column }} = resolved_labels_daily.{{ column }} and
        {% endfor -%}
        grid_dates.grid_date = resolved_labels_daily.available_date
),

trailing_counts as (
    select
        {{ entity }},
        grid_date as feature_date,
        sum(flights_resolved) over last_7_days as flights_7d,
        sum(flights_disrupted) over last_7_days as disrupted_7d,
        sum(flights_resolved) over last_28_days as flights_28d,
        sum(flights_disrupted) over last_28_days as disrupted_28d
    from entity_days
    window
        last_7_days as (
            partition by {{ entity }} order by grid_date
            range between interval 6 days preceding and current row
        ),
        last_28_days as (
            partition by {{ entity }} order by grid_date
            range between interval 27 days preceding and current row
        )
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
    where trailing_counts.flights_28d > 0
        or scheduled_entities.feature_date is not null
),

smoothed_rates as (
    select
        {% for column in entity_columns -%}
        entity_feature_days.{{ column }},
        {% endfor -%}
        entity_feature_days.feature_date,
        cast(entity_feature_days.flights_7d as integer) as {{ prefix }}_flights_7d,
        cast(entity_feature_days.disrupted_7d as integer) as {{ prefix }}_disrupted_7d,
        (cast(entity_feature_days.disrupted_7d as double)
            + network_rates.disruption_rate_prior_weight * network_rates.network_disruption_rate_7d)
            / (cast(entity_feature_days.flights_7d as double) + network_rates.disruption_rate_prior_weight)
            as {{ prefix }}_disruption_rate_7d,
        cast(entity_feature_days.flights_28d as integer) as {{ prefix }}_flights_28d,
        cast(entity_feature_days.disrupted_28d as integer) as {{ prefix }}_disrupted_28d,
        (cast(entity_feature_days.disrupted_28d as double)
            + network_rates.disruption_rate_prior_weight * network_rates.network_disruption_rate_28d)
            / (cast(entity_feature_days.flights_28d as double) + network_rates.disruption_rate_prior_weight)
            as {{ prefix }}_disruption_rate_28d
    from entity_feature_days
    left join network_rates
        on entity_feature_days.feature_date = network_rates.feature_date
)
{%- endmacro %}

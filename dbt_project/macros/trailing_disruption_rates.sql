{#
    Trailing disruption rates of one entity (a route, a carrier, an origin-hour) for every
    feature date of the run, as CTEs: Keel's trailing_rate_ctes over flights. The calling model
    defines the import CTEs `scheduled_flights` (int_flights_scheduled), `flight_outcomes`
    (int_flight_outcomes) and `network_rates` (online_network_features) and ends with
    `select * from final`.

    Point in time: a flight's label counts for feature date D only from its
    label_available_from_date on, the first date whose earliest prediction moment
    (local midnight - 2 h) comes after the label is resolved (at most 3 days after the
    flight, tested on int_flight_outcomes).

    Smoothing: rate = (disrupted + w * network rate) / (flights + w), with w the var
    disruption_rate_prior_weight (in flights) and the network rate of the same window and date.
    Null while the network itself has no resolved flight in the window (the first day of data).

    Columns: <prefix>_flights_7d, <prefix>_disrupted_7d, <prefix>_disruption_rate_7d and the
    same for 28 days.
#}
{% macro trailing_disruption_rate_ctes(entity_columns, prefix) -%}

targets as (
    select * from scheduled_flights
),

outcomes as (
    select * from flight_outcomes
),

{{ trailing_rate_ctes(
    entity_columns, prefix,
    target_date='flight_date', outcome_date='flight_date',
    available_date='label_available_from_date', positive='is_disrupted',
    prior='network_rates', prior_weight='disruption_rate_prior_weight',
    prior_rate='network_disruption_rate',
    names={'rows': 'flights', 'positives': 'disrupted', 'rate': 'disruption_rate'},
    windows=[7, 28], label_delay_days=3
) }}
{%- endmacro %}

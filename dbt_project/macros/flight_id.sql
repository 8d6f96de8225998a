{#
    The key of a scheduled flight: local date, carrier, flight number and origin, e.g.
    '20130101-UA-1545-EWR'. usecases.flights_online.flight_id builds the same string.
#}
{% macro flight_id(flight_date, carrier, flight_number, origin) -%}
    strftime({{ flight_date }}, '%Y%m%d') || '-' || {{ carrier }} || '-'
        || cast({{ flight_number }} as varchar) || '-' || {{ origin }}
{%- endmacro %}

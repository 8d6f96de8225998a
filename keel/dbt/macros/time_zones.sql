{#
    Conversions between naive UTC and naive local time stamps (DuckDB's built-in ICU).
    Both return TIMESTAMP, so nothing downstream depends on the session's TimeZone.
#}
{% macro local_to_utc(local_timestamp, time_zone) -%}
    timezone('UTC', timezone({{ time_zone }}, {{ local_timestamp }}))
{%- endmacro %}

{% macro utc_to_local(utc_timestamp, time_zone) -%}
    timezone({{ time_zone }}, timezone('UTC', {{ utc_timestamp }}))
{%- endmacro %}

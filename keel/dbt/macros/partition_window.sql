{#
    The partition window of a run: dbt vars `min_date` and `max_date`, inclusive local
    dates as 'YYYY-MM-DD'. Without them a run covers every date.
#}
{% macro partition_window() %}
    {%- set min_date = var('min_date', none) -%}
    {%- set max_date = var('max_date', none) -%}
    {%- if min_date is none and max_date is none -%}
        {{ return(none) }}
    {%- endif -%}
    {%- if min_date is none or max_date is none -%}
        {{ exceptions.raise_compiler_error("Pass both min_date and max_date, or neither (got min_date=" ~ min_date ~ ", max_date=" ~ max_date ~ ")") }}
    {%- endif -%}
    {%- for value in [min_date, max_date] -%}
        {%- if not modules.re.fullmatch('[0-9]{4}-[0-9]{2}-[0-9]{2}', value | string) -%}
            {{ exceptions.raise_compiler_error("min_date and max_date must be dates as 'YYYY-MM-DD', got '" ~ value ~ "'") }}
        {%- endif -%}
    {%- endfor -%}
    {%- if (min_date | string) > (max_date | string) -%}
        {{ exceptions.raise_compiler_error("min_date " ~ min_date ~ " is after max_date " ~ max_date) }}
    {%- endif -%}
    {{ return({'min_date': min_date | string, 'max_date': max_date | string}) }}
{% endmacro %}


{#
    A predicate keeping the rows of `column` (a DATE) inside the run's window, widened by
    `lookback_days` before it and `lookahead_days` after it; `true` when the run has no window.
#}
{% macro in_partition_window(column, lookback_days=0, lookahead_days=0) -%}
    {%- set window = partition_window() -%}
    {%- if window is none -%}
        true
    {%- else -%}
        {{ column }} between date '{{ window.min_date }}' - {{ lookback_days | int }}
            and date '{{ window.max_date }}' + {{ lookahead_days | int }}
    {%- endif -%}
{%- endmacro %}


{#
    Pre-hook of every incremental model: empty the window's dates before the new rows go in.
    delete+insert by unique_key alone would leave a date untouched when the rebuild yields no
    rows for it (for example after its gate turned red), so the window itself is cleared.
#}
{% macro delete_partition_window(column) -%}
    {%- if is_incremental() -%}
        delete from {{ this }} where {{ in_partition_window(column) }}
    {%- endif -%}
{%- endmacro %}

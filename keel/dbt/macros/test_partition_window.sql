{#
    Data tests check only the run's partition window when the run has one (vars min_date,
    max_date) and the tested model names its partition column in config.meta.partition_column:
    a daily build tests the day it built instead of the whole history again. A run without a
    window tests every row. A test opts out with config.meta.whole_table: true.
#}
{% macro duckdb__get_where_subquery(relation) -%}
    {%- set predicates = [] -%}
    {%- set where = config.get('where', '') -%}
    {%- if where -%}
        {%- do predicates.append(where) -%}
    {%- endif -%}
    {#- parsing renders this with dbt's macros only; the window is known at execution -#}
    {%- if execute -%}
        {%- set partition_column = partition_column_of(relation) -%}
        {%- set whole_table = (config.get('meta') or {}).get('whole_table', false) -%}
        {%- if partition_column and not whole_table and partition_window() is not none -%}
            {%- do predicates.append(in_partition_window(partition_column)) -%}
        {%- endif -%}
    {%- endif -%}
    {%- if predicates -%}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ predicates | join(' and ') }}) dbt_subquery
        {%- endset -%}
        {%- do return(filtered) -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}


{% macro partition_column_of(relation) -%}
    {%- set wanted = (relation | string) | replace('"', '') | lower -%}
    {%- for node in graph.nodes.values() -%}
        {%- if node.resource_type == 'model'
            and (node.relation_name or '') | replace('"', '') | lower == wanted -%}
            {{ return(node.config.meta.get('partition_column')) }}
        {%- endif -%}
    {%- endfor -%}
    {{ return(none) }}
{%- endmacro %}

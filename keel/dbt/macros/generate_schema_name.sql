{#
    Models land in the schema their folder names (staging, intermediate, marts, online), not in
    "<target schema>_<folder>": consumers such as the online store read `online.*` and
    `marts.<features>` by those names.
#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}

{#
    The days of landed table `table_name` that reached the models: those whose latest gate
    evaluation (source audit.gate_status, written by Keel's gates) passed. A day without an
    evaluation has not passed. Use it in a staging model as
        passed_days as ({{ gated_days('orders') }})
    and keep only the rows whose _partition_date is among them.
#}
{% macro gated_days(table_name) -%}
    select cast(partition_date as date) as partition_date
    from {{ source('audit', 'gate_status') }}
    where table_name = '{{ table_name }}'
    group by 1
    having coalesce(arg_max(cast(passed as boolean), cast(evaluated_at as timestamp)), false)
{%- endmacro %}

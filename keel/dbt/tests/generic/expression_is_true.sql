{#
    A boolean SQL expression holds on every row; with column_name, the expression is appended
    to the column (e.g. expression: ">= 0"). Stricter than dbt_utils: a row where the
    expression is null fails, so write `x is null or ...` where nulls are fine.
#}
{% test expression_is_true(model, expression, column_name=none) %}
select *
from {{ model }}
where not coalesce(({{ column_name ~ ' ' if column_name is not none }}{{ expression }}), false)
{% endtest %}

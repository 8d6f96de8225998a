{# The column has at least one non-null value. #}
{% test at_least_one(model, column_name) %}
select count({{ column_name }}) as non_null_values
from {{ model }}
having count({{ column_name }}) = 0
{% endtest %}

{# The column takes at least two distinct non-null values. #}
{% test not_constant(model, column_name) %}
select count(distinct {{ column_name }}) as distinct_values
from {{ model }}
having count(distinct {{ column_name }}) < 2
{% endtest %}

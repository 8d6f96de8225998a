{# The column takes at least two distinct non-null values wherever it has rows. #}
{% test not_constant(model, column_name) %}
select count(distinct {{ column_name }}) as distinct_values
from {{ model }}
having count(*) > 0 and count(distinct {{ column_name }}) < 2
{% endtest %}

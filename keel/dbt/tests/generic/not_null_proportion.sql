{# At least `at_least` (a share, 0..1) of the rows have a non-null value in the column. #}
{% test not_null_proportion(model, column_name, at_least) %}
select
    count({{ column_name }}) as non_null_values,
    count(*) as all_values
from {{ model }}
having count(*) > 0
    and count({{ column_name }}) < {{ at_least }} * count(*)
{% endtest %}

{#
    The model and compare_model have the same number of rows (both within the run's partition
    window when they have one, see get_where_subquery).
#}
{% test equal_rowcount(model, compare_model) %}
with

model_rows as (
    select count(*) as row_count from {{ model }}
),

compare_rows as (
    select count(*) as row_count from {{ get_where_subquery(compare_model) }}
)

select
    model_rows.row_count as model_row_count,
    compare_rows.row_count as compare_row_count
from model_rows
cross join compare_rows
where model_rows.row_count != compare_rows.row_count
{% endtest %}

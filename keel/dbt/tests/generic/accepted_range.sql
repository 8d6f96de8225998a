{#
    Every non-null value of the column lies within [min_value, max_value] (bounds optional;
    exclusive when inclusive=false).
#}
{% test accepted_range(model, column_name, min_value=none, max_value=none, inclusive=true) %}
{%- if min_value is none and max_value is none -%}
    {{ exceptions.raise_compiler_error("accepted_range needs min_value, max_value or both") }}
{%- endif -%}
{%- set low_op = '>=' if inclusive else '>' -%}
{%- set high_op = '<=' if inclusive else '<' -%}

select {{ column_name }} as out_of_range_value
from {{ model }}
where {{ column_name }} is not null
    and not (
        {% if min_value is not none %}{{ column_name }} {{ low_op }} {{ min_value }}{% else %}true{% endif %}
        and {% if max_value is not none %}{{ column_name }} {{ high_op }} {{ max_value }}{% else %}true{% endif %}
    )
{% endtest %}

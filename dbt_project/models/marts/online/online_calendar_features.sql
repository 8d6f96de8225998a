{{ config(materialized='table', alias='calendar_features') }}

{#
    Calendar features per local date, for every date between the first and the last holiday of
    the seed us_federal_holidays (2012-01-02 .. 2014-12-25): outside that span the distance to
    the nearest holiday is unknown, so those dates have no row and a flight on them fails the
    not_null tests of flight_features. Extend the seed to serve later years.
#}

with

holidays as (
    select * from {{ ref('us_federal_holidays') }}
),

holiday_dates as (
    select distinct cast(observed_date as date) as holiday_date
    from holidays
),

calendar_days as (
    select cast(unnest(range(
        cast(min(holiday_date) as timestamp),
        cast(max(holiday_date) + 1 as timestamp),
        interval 1 day
    )) as date) as feature_date
    from holiday_dates
),

previous_holiday as (
    select
        calendar_days.feature_date,
        holiday_dates.holiday_date as previous_holiday_date
    from calendar_days
    asof inner join holiday_dates
        on calendar_days.feature_date >= holiday_dates.holiday_date
),

next_holiday as (
    select
        calendar_days.feature_date,
        holiday_dates.holiday_date as next_holiday_date
    from calendar_days
    asof inner join holiday_dates
        on calendar_days.feature_date <= holiday_dates.holiday_date
),

final as (
    select
        previous_holiday.feature_date,
        cast(isodow(previous_holiday.feature_date) as integer) as day_of_week,
        cast(month(previous_holiday.feature_date) as integer) as month,
        cast(least(
            previous_holiday.feature_date - previous_holiday.previous_holiday_date,
            next_holiday.next_holiday_date - previous_holiday.feature_date
        ) as integer) as days_to_nearest_holiday,
        cast(next_holiday.next_holiday_date - previous_holiday.feature_date as integer)
            as days_to_next_holiday,
        cast(previous_holiday.feature_date - previous_holiday.previous_holiday_date as integer)
            as days_since_last_holiday
    from previous_holiday
    inner join next_holiday
        on previous_holiday.feature_date = next_holiday.feature_date
)

select * from final

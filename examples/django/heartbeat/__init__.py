"""A Django app whose master job records, on one worker at a time, that the application is up."""

#!/bin/sh
# The workers' database role, made once when the postgres service initialises its data
# volume (the postgres image runs /docker-entrypoint-initdb.d/*.sh as POSTGRES_USER).
# It may log in and nothing more: `celery master migrate --grant celery_worker`, run by
# the owner of the lease schema, gives it the rows of the lease tables.
set -eu
psql -v ON_ERROR_STOP=1 -v worker_password="$WORKER_DB_PASSWORD" \
  --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE celery_worker LOGIN PASSWORD :'worker_password';
-- the default since PostgreSQL 15, said for older servers: only owners create tables
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SQL

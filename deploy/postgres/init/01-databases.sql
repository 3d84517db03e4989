-- Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d).
-- One database per service: no service reads another's tables (DESIGN.md).
-- Each service builds its own schema in its database at start.
CREATE DATABASE orders;    -- order_svc
CREATE DATABASE inventory; -- inventory_svc
CREATE DATABASE payments;  -- payment_svc
CREATE DATABASE gateway;   -- gateway_mock
CREATE DATABASE webhooks;  -- webhook_svc

-- One role and one database per service (dev only; prod: one CloudNativePG cluster each).
CREATE ROLE identity LOGIN PASSWORD 'dev-only-identity-db-password';
CREATE DATABASE identity OWNER identity;
CREATE ROLE points LOGIN PASSWORD 'dev-only-points-db-password';
CREATE DATABASE points OWNER points;
CREATE ROLE shop LOGIN PASSWORD 'dev-only-shop-db-password';
CREATE DATABASE shop OWNER shop;
CREATE ROLE travel LOGIN PASSWORD 'dev-only-travel-db-password';
CREATE DATABASE travel OWNER travel;
CREATE ROLE fintech LOGIN PASSWORD 'dev-only-fintech-db-password';
CREATE DATABASE fintech OWNER fintech;

-- Operators' AI price overrides: one row per model name (lower case), its
-- rates as the JSON of a model price in micro-USD per million tokens. They
-- replace or add to the built-in price table wherever a request or an agent
-- run is priced.
CREATE TABLE ai_prices (
    model TEXT PRIMARY KEY,
    price TEXT NOT NULL,
    version BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

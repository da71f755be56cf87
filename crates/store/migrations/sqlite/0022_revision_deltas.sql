-- A revision holds either the whole configuration (`snapshot`: a keyframe) or
-- the objects it changed from the revision before it (`delta`), so that a
-- change to one route writes that route, not every route. Rows written before
-- this migration are all keyframes. SQLite cannot drop a NOT NULL in place: the
-- table is made again.
CREATE TABLE revisions_new (
    number INTEGER PRIMARY KEY,
    created_at INTEGER NOT NULL,
    author TEXT NOT NULL,
    message TEXT NOT NULL,
    snapshot TEXT,
    delta TEXT,
    CHECK (snapshot IS NOT NULL OR delta IS NOT NULL)
);

INSERT INTO revisions_new (number, created_at, author, message, snapshot)
    SELECT number, created_at, author, message, snapshot FROM revisions;

DROP TABLE revisions;

ALTER TABLE revisions_new RENAME TO revisions;

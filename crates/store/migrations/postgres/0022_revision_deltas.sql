-- A revision holds either the whole configuration (`snapshot`: a keyframe) or
-- the objects it changed from the revision before it (`delta`), so that a
-- change to one route writes that route, not every route. Rows written before
-- this migration are all keyframes.
ALTER TABLE revisions ALTER COLUMN snapshot DROP NOT NULL;

ALTER TABLE revisions ADD COLUMN delta TEXT;

ALTER TABLE revisions ADD CONSTRAINT revisions_snapshot_or_delta
    CHECK (snapshot IS NOT NULL OR delta IS NOT NULL);

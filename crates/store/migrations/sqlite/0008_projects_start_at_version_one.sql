-- Projects start at published version 1, as Flecto's do: its agents treat 0 as
-- "nothing yet" and never fetch or register. Projects created before this rule
-- and never published move from 0 to 1.
UPDATE projects SET published_version = 1 WHERE published_version = 0;

"""The edge store's schema, as an append-only list of migrations.

Never edit a released migration: append a new one. ``PRAGMA user_version`` records how many have been
applied; a database with a higher version than this code knows is refused (SchemaVersionError) rather
than misread.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "agents, L2 turns and notes, tool intents, mind-log, outbox",
        """
        CREATE TABLE agents (
            agent_id   TEXT PRIMARY KEY,
            status     INTEGER NOT NULL,
            state      BLOB NOT NULL,            -- edgehub.v1.AgentState
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX agents_by_status ON agents(status, created_at);
        CREATE TABLE turns (
            agent_id TEXT NOT NULL REFERENCES agents(agent_id),
            step     INTEGER NOT NULL,
            idx      INTEGER NOT NULL,
            role     TEXT NOT NULL,
            text     TEXT NOT NULL,
            tokens   INTEGER NOT NULL,
            PRIMARY KEY (agent_id, step, idx)
        );
        CREATE TABLE notes (
            agent_id   TEXT NOT NULL,
            key        TEXT NOT NULL,
            value      TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (agent_id, key)
        );
        CREATE TABLE intents (
            key           TEXT PRIMARY KEY,      -- <agent_id>/<step>
            agent_id      TEXT NOT NULL,
            step          INTEGER NOT NULL,
            tool          TEXT NOT NULL,
            args_json     TEXT NOT NULL,
            proposal_json TEXT NOT NULL,
            result        BLOB,                  -- edgehub.v1.ToolResult once checkpointed
            created_at    REAL NOT NULL
        );
        CREATE TABLE mind_log (
            id       INTEGER PRIMARY KEY,
            agent_id TEXT NOT NULL,
            step     INTEGER NOT NULL,
            kind     INTEGER NOT NULL,
            event_id TEXT NOT NULL UNIQUE,
            event    BLOB NOT NULL              -- edgehub.v1.StepEvent
        );
        CREATE INDEX mind_log_by_agent ON mind_log(agent_id, id);
        CREATE TABLE outbox (
            seq        INTEGER PRIMARY KEY,      -- assigned max+1 in the writing transaction: gap-free
            event_id   TEXT NOT NULL UNIQUE,
            event      BLOB NOT NULL,            -- edgehub.v1.EdgeEvent
            created_at REAL NOT NULL,
            acked      INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX outbox_unacked ON outbox(acked, seq);
        """,
    ),
    Migration(
        2,
        "approvals for calls that policy marks needs-approval",
        """
        CREATE TABLE approvals (
            key           TEXT PRIMARY KEY,      -- <agent_id>/<step>, the call's idempotency key
            agent_id      TEXT NOT NULL,
            step          INTEGER NOT NULL,
            tool          TEXT NOT NULL,
            args_json     TEXT NOT NULL,
            proposal_json TEXT NOT NULL,
            rule          TEXT NOT NULL,
            reason        TEXT NOT NULL,
            status        TEXT NOT NULL,         -- pending | approved | denied
            decided_by    TEXT NOT NULL DEFAULT '',
            note          TEXT NOT NULL DEFAULT '',
            requested_at  REAL NOT NULL,
            decided_at    REAL
        );
        CREATE INDEX approvals_by_status ON approvals(status, requested_at);
        """,
    ),
    Migration(
        3,
        "PII vault: masked token -> the original, encrypted with the device's vault key",
        """
        CREATE TABLE pii_vault (
            token      TEXT PRIMARY KEY,         -- e.g. <EMAIL_3f9a2c1b0d>
            kind       TEXT NOT NULL,
            sealed     BLOB NOT NULL,            -- AES-GCM(nonce || ciphertext) of the original
            created_at REAL NOT NULL
        );
        """,
    ),
    Migration(
        4,
        "L3 episodic memory: episodes and their embeddings (sqlite-vec, 384-d, cosine)",
        """
        CREATE TABLE episodes (
            id          INTEGER PRIMARY KEY,     -- also the rowid in episode_vectors
            key         TEXT NOT NULL UNIQUE,    -- the source event id (or remember/<agent>/<hash>)
            agent_id    TEXT NOT NULL,
            text        TEXT NOT NULL,
            at          REAL NOT NULL,           -- when it happened (unix seconds)
            importance  REAL NOT NULL,           -- 0..1
            source_step INTEGER NOT NULL,
            pruned_at   REAL                     -- set when consolidation abstracted it away
        );
        CREATE INDEX episodes_by_agent ON episodes(agent_id, at);
        CREATE VIRTUAL TABLE episode_vectors USING vec0(
            agent_id TEXT,
            embedding float[384] distance_metric=cosine
        );
        """,
    ),
    Migration(
        5,
        "L3 search in two stages: binary-quantized vectors for the scan, exact float32 ones to re-score",
        """
        ALTER TABLE episodes ADD COLUMN embedding BLOB;  -- float32 x 384, unit length
        UPDATE episodes
            SET embedding = (SELECT v.embedding FROM episode_vectors v WHERE v.rowid = episodes.id);
        CREATE VIRTUAL TABLE episode_bits USING vec0(
            agent_id TEXT,
            bits bit[384]                              -- sign bits of the embedding (hamming distance)
        );
        INSERT INTO episode_bits(rowid, agent_id, bits)
            SELECT id, agent_id, vec_quantize_binary(embedding) FROM episodes;
        DROP TABLE episode_vectors;
        """,
    ),
    Migration(
        6,
        "answers of the hub's knowledge graph, kept for offline use; episodes consolidated by the hub",
        """
        CREATE TABLE knowledge_cache (
            query      TEXT PRIMARY KEY,         -- the question, lower-cased, spaces collapsed
            answer     BLOB NOT NULL,            -- KnowledgeAnswer (protobuf)
            fetched_at REAL NOT NULL
        );
        CREATE INDEX knowledge_cache_by_age ON knowledge_cache(fetched_at);
        ALTER TABLE episodes ADD COLUMN pruned_by TEXT;  -- the hub's consolidation run
        CREATE INDEX episodes_pruned ON episodes(pruned_at) WHERE pruned_at IS NOT NULL;
        """,
    ),
    Migration(
        7,
        "L3 search: the binary-quantized vectors in 8 partitions, each scanned for its share of candidates",
        """
        -- sqlite-vec's KNN picks each chunk's k nearest by repeated minimum search (time ~ k x rows):
        -- asking each of 8 partitions (episode id % 8, sqlite.py EPISODE_PARTS) for k/8 costs 1/8.
        DROP TABLE episode_bits;
        CREATE VIRTUAL TABLE episode_bits USING vec0(
            part INTEGER PARTITION KEY,                -- episodes.id % 8
            agent_id TEXT,
            bits bit[384]                              -- sign bits of the embedding (hamming distance)
        );
        INSERT INTO episode_bits(rowid, part, agent_id, bits)
            SELECT id, id % 8, agent_id, vec_quantize_binary(embedding) FROM episodes
            WHERE embedding IS NOT NULL;
        """,
    ),
    Migration(
        8,
        "approvals record how they were decided: a decision the hub signed (once) or one made on the device",
        """
        ALTER TABLE approvals ADD COLUMN decided_via TEXT NOT NULL DEFAULT '';  -- hub | local | '' (before 8)
        ALTER TABLE approvals ADD COLUMN decision_id TEXT NOT NULL DEFAULT '';  -- the hub's signed decision
        CREATE UNIQUE INDEX approvals_by_decision ON approvals(decision_id) WHERE decision_id != '';
        """,
    ),
    Migration(
        9,
        "the store generation (its watermark beside the file catches a rollback) and accepted rollbacks",
        """
        CREATE TABLE store_meta (
            id         INTEGER PRIMARY KEY CHECK (id = 1),
            generation INTEGER NOT NULL          -- +1 per write transaction; <db>.watermark records it
        );
        INSERT INTO store_meta(id, generation) VALUES (1, 0);
        CREATE TABLE rollbacks (                 -- each loss an operator accepted (edge doctor --store)
            id          INTEGER PRIMARY KEY,
            accepted_at REAL NOT NULL,
            accepted_by TEXT NOT NULL,
            found       INTEGER NOT NULL,        -- the generation the store had
            recorded    INTEGER NOT NULL,        -- the generation its watermark had recorded
            acked_seq   INTEGER NOT NULL,        -- the outbox goes on after this sequence
            outbox_seq  INTEGER NOT NULL,        -- the highest sequence the store still had
            agents      TEXT NOT NULL            -- active agents that resume from older checkpoints
        );
        """,
    ),
    Migration(
        10,
        "each outbox event keeps the trace context of the step that wrote it, for the hub's span of it",
        """
        ALTER TABLE outbox ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';  -- W3C; '' untraced or before 10
        """,
    ),
    Migration(
        11,
        "retention: indexes that find old intents and an agent's intents; what retention pruned, per kind",
        """
        CREATE INDEX intents_by_age ON intents(created_at);
        CREATE INDEX intents_by_agent ON intents(agent_id, step);
        CREATE TABLE pruned (                    -- rows retention deleted over the store's life
            kind    TEXT PRIMARY KEY,            -- outbox | mind_log | agents | intents | episodes
            rows    INTEGER NOT NULL,
            last_at REAL NOT NULL
        );
        """,
    ),
    Migration(
        12,
        "an accepted rollback records what it lost that the hub had seen (edge doctor --recover-from-hub)",
        """
        ALTER TABLE rollbacks ADD COLUMN lost TEXT NOT NULL DEFAULT '[]';  -- JSON list, one line a loss
        """,
    ),
    Migration(
        13,
        "approvals name the policy that asked for them (fleet bundle version and digest)",
        """
        ALTER TABLE approvals ADD COLUMN policy_version INTEGER NOT NULL DEFAULT 0;  -- 0: local or default
        ALTER TABLE approvals ADD COLUMN policy_digest TEXT NOT NULL DEFAULT '';
        """,
    ),
)

LATEST = MIGRATIONS[-1].version

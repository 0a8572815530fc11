-- ccgate schema, migration 002: a hash of each conversation's history.
-- OpenAI- and Anthropic-style clients resend the whole history each turn;
-- the hash (a chain: H(previous || role || 0 || content), starting from the
-- system prompt) finds the conversation such a request continues.
ALTER TABLE conversations
    ADD COLUMN IF NOT EXISTS history_hash CHAR(64) NULL
        COMMENT 'chained hash of the system prompt and every message';
CREATE INDEX IF NOT EXISTS idx_conversations_history
    ON conversations (tenant, history_hash);

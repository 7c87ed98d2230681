"""Anthropic's Messages API (`/v1/messages`), on the same text core as OpenAI's chat."""

"""Base models: where they come from, how they load, and how chats become prompts."""

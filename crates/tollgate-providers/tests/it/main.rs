mod anthropic;
mod azure;
mod openai;

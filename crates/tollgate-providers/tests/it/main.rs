mod anthropic;
mod azure;
mod bedrock;
mod google;
mod openai;
mod vertex;

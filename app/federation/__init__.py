"""The federation on Flower's Message API. The server: the ServerApp's entry (server_app), its round loop, the one
place a round reads top to bottom (rounds), messages out and replies in (exchange), the server's global model
(global_model), the strategy's arithmetic (strategy; screening of replies, aggregation) and its resume state
(resume). A node: the ClientApp (client_app) and its work on each message (client_work), the socket to a warm
worker (channel). Both ends: the wire format (codec: arithmetic without Flower; wire: Flower records). Imports
app.common and app.learning."""

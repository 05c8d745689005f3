from atelier.cli import app

app()

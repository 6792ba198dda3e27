"""Small libraries shared by two or more apps; nothing here imports an app."""

# placeholder: the ring core is being written

def _placeholder():
    return None
